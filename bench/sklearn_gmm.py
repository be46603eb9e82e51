"""sklearn_gmm: the scikit-learn peer of moekit_em_bench.

GaussianMixture with max_iter fixed and tol = 0 (every iteration runs), reg_covar = 0, started
from the model in <prefix>.start (weights_init, means_init, precisions_init), timed around fit().

Usage: python3 sklearn_gmm.py <prefix> <n> <full|diag> <iterations>
Prints: sklearn threads=T iterations=N seconds=S seconds_per_iteration=S/N
        cpu_seconds_per_iteration=C/N loglik=L
(seconds: wall time of fit(); loglik: score(X) * n of the final model).

fit() also runs one M-step from init_params='random_from_data' responsibilities before the
given parameters replace its result, and a final E-step; both are included in the time (as
moekit's figure includes its initial E-step).
"""
import os
import sys
import time
import warnings

import numpy as np
from sklearn.mixture import GaussianMixture


def main():
    if len(sys.argv) != 5:
        sys.exit("usage: sklearn_gmm.py <prefix> <n> <full|diag> <iterations>")
    prefix, n, cov, iterations = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    with open(prefix + ".start") as f:
        tokens = f.read().split()
    if tokens[0] != "gmm":
        sys.exit(prefix + ".start is not a gmm case")
    k, d = int(tokens[1]), int(tokens[2])
    numbers = np.array(tokens[3:], dtype=np.float64)
    weights = numbers[:k]
    means = numbers[k:k + k * d].reshape(k, d)
    covariances = numbers[k + k * d:k + k * d + k * d * d].reshape(k, d, d)
    if cov == "full":
        precisions = np.linalg.inv(covariances)
    elif cov == "diag":
        precisions = 1.0 / np.diagonal(covariances, axis1=1, axis2=2)
    else:
        sys.exit("covariance must be full or diag")
    x = np.fromfile(prefix + ".bin", dtype="<f8").reshape(n, d)

    gm = GaussianMixture(n_components=k, covariance_type=cov, tol=0.0, reg_covar=0.0,
                         max_iter=iterations, init_params="random_from_data",
                         weights_init=weights, means_init=means, precisions_init=precisions,
                         random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: tol = 0 never converges
        c0, t0 = time.process_time(), time.perf_counter()
        gm.fit(x)
        t1, c1 = time.perf_counter(), time.process_time()
    loglik = gm.score(x) * n
    threads = os.environ.get("OMP_NUM_THREADS", "?")
    print("sklearn threads=%s iterations=%d seconds=%.6f seconds_per_iteration=%.6f "
          "cpu_seconds_per_iteration=%.6f loglik=%.12g"
          % (threads, gm.n_iter_, t1 - t0, (t1 - t0) / gm.n_iter_, (c1 - c0) / gm.n_iter_, loglik))


if __name__ == "__main__":
    main()
