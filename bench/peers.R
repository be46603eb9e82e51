# peers.R: the R peers of moekit_em_bench (mclust, flexmix, mixtools), on a case written by
# bench_gen (bench_io.hpp describes the files).
#
# Usage: Rscript peers.R <tool> <prefix> <n> <variant> <iterations>
#   tool mclust,   variant full|diag : mclust::me(), model "VVV" or "VVI"
#   tool flexmix,  variant constant|softmax : flexmix() with FLXMRglm linear experts; softmax
#                  adds the concomitant model FLXPmultinom(~ x1 + ... + xd)
#   tool mixtools, variant constant : mixtools::regmixEM() (mixture of regressions)
# Prints: <tool> threads=1 iterations=N seconds=S seconds_per_iteration=S/N
#         cpu_seconds_per_iteration=C/N loglik=L
#
# Starting point. mixtools starts from the parameters in <prefix>.start, exactly like moekit.
# mclust and flexmix start from responsibilities (their first step is an M-step); they get the
# E-step of the start model, z0 = E(θ0), so that their iteration t produces the same θt as
# moekit's. The time covers the EM call only (data reading and z0 excluded). The R peers are
# single-threaded.

args <- commandArgs(trailingOnly = TRUE)
if (length(args) != 5) stop("usage: Rscript peers.R <tool> <prefix> <n> <variant> <iterations>")
tool <- args[1]
prefix <- args[2]
n <- as.integer(args[3])
variant <- args[4]
iterations <- as.integer(args[5])

tokens <- scan(paste0(prefix, ".start"), what = character(), quiet = TRUE)
kind <- tokens[1]
K <- as.integer(tokens[2])
c <- as.integer(tokens[3])
numbers <- as.numeric(tokens[-(1:3)])

report <- function(name, iters, timing, loglik) {
  elapsed <- unname(timing["elapsed"])
  cpu <- unname(timing["user.self"] + timing["sys.self"])
  cat(sprintf("%s threads=1 iterations=%d seconds=%.6f seconds_per_iteration=%.6f cpu_seconds_per_iteration=%.6f loglik=%.12g\n",
              name, iters, elapsed, elapsed / iters, cpu / iters, loglik))
}

log_softmax_rows <- function(a) {
  m <- apply(a, 1, max)
  a - (m + log(rowSums(exp(a - m))))
}

if (kind == "gmm") {
  if (tool != "mclust") stop("Gaussian mixture cases are run by mclust only")
  suppressPackageStartupMessages(library(mclust))
  D <- c
  x <- matrix(readBin(paste0(prefix, ".bin"), "double", n * D, size = 8, endian = "little"),
              ncol = D, byrow = TRUE)
  w <- numbers[1:K]
  means <- matrix(numbers[K + 1:(K * D)], nrow = D)          # D×K: column k is μ_k
  sigma <- array(numbers[K + K * D + 1:(K * D * D)], c(D, D, K))
  model <- if (variant == "full") "VVV" else "VVI"
  # z0: the E-step of the start model (its log densities by Cholesky, here in R).
  logd <- matrix(0, n, K)
  for (k in 1:K) {
    s <- sigma[, , k]
    if (variant == "diag") s <- diag(diag(s))
    L <- t(chol(s))
    r <- forwardsolve(L, t(x) - means[, k])
    logd[, k] <- log(w[k]) - 0.5 * D * log(2 * pi) - sum(log(diag(L))) - 0.5 * colSums(r^2)
  }
  z0 <- exp(log_softmax_rows(logd))
  timing <- system.time(fit <- me(x, modelName = model, z = z0,
                                  control = emControl(tol = c(0, 0), itmax = iterations)))
  report("mclust", fit$control$itmax[1], timing, fit$loglik)
} else if (kind == "reg") {
  d <- c
  all <- matrix(readBin(paste0(prefix, ".bin"), "double", n * (d + 1), size = 8, endian = "little"),
                ncol = d + 1, byrow = TRUE)
  y <- all[, 1]
  x <- all[, -1, drop = FALSE]
  colnames(x) <- paste0("x", 1:d)
  v <- matrix(numbers[1:((d + 1) * K)], nrow = d + 1, byrow = TRUE)   # gate, all 0
  beta <- matrix(numbers[(d + 1) * K + 1:(K * (d + 1))], nrow = d + 1) # (d+1)×K
  s2 <- numbers[2 * (d + 1) * K + 1:K]
  if (tool == "mixtools") {
    suppressPackageStartupMessages(library(mixtools))
    timing <- system.time(invisible(capture.output(
      fit <- regmixEM(y, x, lambda = rep(1 / K, K), beta = beta, sigma = sqrt(s2), k = K,
                      addintercept = TRUE, epsilon = -Inf, maxit = iterations))))
    report("mixtools", length(fit$all.loglik) - 1, timing, fit$loglik)
  } else if (tool == "flexmix") {
    suppressPackageStartupMessages(library(flexmix))
    # z0: E-step of the start model (uniform gate: V = 0).
    mu <- cbind(1, x) %*% beta
    logd <- sapply(1:K, function(k) dnorm(y, mu[, k], sqrt(s2[k]), log = TRUE))
    z0 <- exp(log_softmax_rows(logd))
    frame <- data.frame(y = y, x)
    rhs <- paste(colnames(x), collapse = " + ")
    control <- list(iter.max = iterations, minprior = 0, tolerance = 0, verbose = 0)
    if (variant == "softmax") {
      timing <- system.time(fit <- flexmix(as.formula(paste("y ~", rhs)), data = frame, k = K,
                                           cluster = z0, model = FLXMRglm(),
                                           concomitant = FLXPmultinom(as.formula(paste("~", rhs))),
                                           control = control))
    } else {
      timing <- system.time(fit <- flexmix(as.formula(paste("y ~", rhs)), data = frame, k = K,
                                           cluster = z0, model = FLXMRglm(), control = control))
    }
    report(if (variant == "softmax") "flexmix_concomitant" else "flexmix", fit@iter, timing,
           as.numeric(logLik(fit)))
  } else {
    stop("regression cases are run by flexmix or mixtools")
  }
} else {
  stop(paste("unknown case kind", kind))
}
