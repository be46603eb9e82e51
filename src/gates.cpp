#include "moekit/gates.hpp"

#include "detail.hpp"
#include "moekit/errors.hpp"
#include "moekit/log_sum_exp.hpp"

#include <cmath>
#include <limits>

namespace moekit {

std::string_view to_string(GateKind kind) {
    return kind == GateKind::Constant ? "constant" : "softmax";
}

GateKind parse_gate_kind(std::string_view text) {
    const std::string t = detail::lower_case(text);
    if (t == "constant") return GateKind::Constant;
    if (t == "softmax") return GateKind::Softmax;
    throw_invalid_argument(
        "parse_gate_kind", "gate", "'" + std::string(text) + "'", "must be constant or softmax");
}

GateKind gate_kind(const Gate& gate) {
    return std::holds_alternative<ConstantGate>(gate) ? GateKind::Constant : GateKind::Softmax;
}

Matrix gate_design(const Dataset& data) {
    const Index n = data.n_samples();
    Matrix design(n, data.z.cols() + 1);
    design.col(0).setOnes();
    design.rightCols(data.z.cols()) = data.z;
    return design;
}

namespace {

/// Row-wise log-softmax of the scores z̃ V: n×K.
Matrix softmax_log_probabilities(const Matrix& coefficients, const ConstMatrixRef& design) {
    Matrix scores = design * coefficients;
    log_softmax_rows_in_place(scores);
    return scores;
}

double penalty_of(const Matrix& coefficients, double gate_l2) {
    if (coefficients.rows() <= 1) return 0.0;
    return 0.5 * gate_l2 * coefficients.bottomRows(coefficients.rows() - 1).squaredNorm();
}

Matrix from_free(const Vector& theta, Index rows, Index K) {
    Matrix v = Matrix::Zero(rows, K);
    v.rightCols(K - 1) = Eigen::Map<const Matrix>(theta.data(), rows, K - 1);
    return v;
}

GateUpdateReport update_softmax(SoftmaxGate& gate,
                                const Dataset& data,
                                const ConstMatrixRef& resp,
                                const GateOptions& options) {
    GateUpdateReport report;
    const Index K = gate.coefficients.cols();
    const Index rows = gate.coefficients.rows();
    const Matrix design = gate_design(data);
    Vector gradient;
    Matrix hessian;
    double current =
        softmax_gate_objective(gate, design, data.weights, resp, options.gate_l2, &gradient, &hessian);
    report.objective = current;
    if (K == 1) return report;
    for (int step = 0; step < options.newton_steps; ++step) {
        // Newton direction: (−H) Δ = ∇. −H is positive semidefinite; LDLT copes with the
        // semidefinite case (an expert with no mass anywhere), and a failure falls back to
        // the gradient direction.
        Eigen::LDLT<Matrix> ldlt(-hessian);
        Vector direction = ldlt.solve(gradient);
        if (ldlt.info() != Eigen::Success || !direction.allFinite() || gradient.dot(direction) <= 0.0)
            direction = gradient;
        // Stop when the predicted increase ½ ∇ᵀΔ is at round-off level.
        if (0.5 * gradient.dot(direction) <= 1e-13 * (1.0 + std::abs(current))) break;
        Eigen::Map<const Vector> theta0(gate.coefficients.rightCols(K - 1).data(), rows * (K - 1));
        const Vector base = theta0;
        double t = 1.0;
        bool accepted = false;
        for (int halving = 0; halving <= 30; ++halving) {
            SoftmaxGate trial{from_free(base + t * direction, rows, K)};
            const double value = softmax_gate_objective(trial, design, data.weights, resp, options.gate_l2);
            if (std::isfinite(value) && value >= current) {
                gate = std::move(trial);
                accepted = value > current;
                current = value;
                report.step_halvings += halving;
                break;
            }
            t *= 0.5;
        }
        if (!accepted) {
            report.stalled = true;
            break;
        }
        ++report.newton_steps;
        current = softmax_gate_objective(gate, design, data.weights, resp, options.gate_l2, &gradient, &hessian);
    }
    report.objective = current;
    return report;
}

} // namespace

double softmax_gate_objective(const SoftmaxGate& gate,
                              const ConstMatrixRef& design,
                              const ConstVectorRef& weights,
                              const ConstMatrixRef& resp,
                              double gate_l2,
                              Vector* gradient,
                              Matrix* hessian) {
    // n samples, m = g + 1 design columns, K experts; free parameters are columns 1..K−1.
    const Index K = gate.coefficients.cols();
    const Index m = design.cols();
    const Matrix log_g = softmax_log_probabilities(gate.coefficients, design);
    // Σ_i w_i Σ_k h_ik log g_ik; terms with h_ik = 0 contribute 0 even where log g_ik = −∞.
    double value = 0.0;
    for (Index k = 0; k < K; ++k)
        for (Index i = 0; i < design.rows(); ++i)
            if (resp(i, k) > 0.0) value += weights(i) * resp(i, k) * log_g(i, k);
    value -= penalty_of(gate.coefficients, gate_l2);
    if (!gradient && !hessian) return value;

    const Matrix g = log_g.array().exp().matrix();
    if (gradient) {
        const Matrix diff = (resp - g).array().colwise() * weights.array();
        Matrix grad = design.transpose() * diff; // m×K
        if (m > 1) grad.bottomRows(m - 1) -= gate_l2 * gate.coefficients.bottomRows(m - 1);
        const Matrix free = grad.rightCols(K - 1);
        *gradient = Eigen::Map<const Vector>(free.data(), m * (K - 1));
    }
    if (hessian) {
        const Index P = m * (K - 1);
        hessian->setZero(P, P);
        for (Index k = 1; k < K; ++k) {
            for (Index l = k; l < K; ++l) {
                Vector a = -weights.cwiseProduct(g.col(k)).cwiseProduct(
                    (k == l ? 1.0 : 0.0) * Vector::Ones(g.rows()) - g.col(l));
                const Matrix block = detail::weighted_gram(design, a);
                hessian->block((k - 1) * m, (l - 1) * m, m, m) = block;
                if (l != k) hessian->block((l - 1) * m, (k - 1) * m, m, m) = block.transpose();
            }
            for (Index j = 1; j < m; ++j) (*hessian)((k - 1) * m + j, (k - 1) * m + j) -= gate_l2;
        }
    }
    return value;
}

Matrix gate_log_probabilities(const Gate& gate, const Dataset& data) {
    return std::visit(
        [&](const auto& g) -> Matrix {
            using T = std::decay_t<decltype(g)>;
            const Index n = data.n_samples();
            if constexpr (std::is_same_v<T, ConstantGate>) {
                const RowVector log_w = g.weights.array().log().matrix().transpose();
                return log_w.replicate(n, 1);
            } else {
                return softmax_log_probabilities(g.coefficients, gate_design(data));
            }
        },
        gate);
}

GateUpdateReport update_gate(Gate& gate, const Dataset& data, const ConstMatrixRef& resp, const GateOptions& options) {
    return std::visit(
        [&](auto& g) -> GateUpdateReport {
            using T = std::decay_t<decltype(g)>;
            if constexpr (std::is_same_v<T, ConstantGate>) {
                // Closed form: π_k = Σ_i w_i h_ik / Σ_i w_i.
                const Vector nk = resp.transpose() * data.weights;
                g.weights = nk / nk.sum();
                GateUpdateReport report;
                report.objective = nk.dot(g.weights.array().log().matrix());
                return report;
            } else {
                return update_softmax(g, data, resp, options);
            }
        },
        gate);
}

double gate_penalty(const Gate& gate, double gate_l2) {
    if (const auto* s = std::get_if<SoftmaxGate>(&gate)) return penalty_of(s->coefficients, gate_l2);
    return 0.0;
}

Index n_parameters(const Gate& gate) {
    return std::visit(
        [](const auto& g) -> Index {
            using T = std::decay_t<decltype(g)>;
            if constexpr (std::is_same_v<T, ConstantGate>)
                return g.weights.size() - 1;
            else
                return (g.coefficients.cols() - 1) * g.coefficients.rows();
        },
        gate);
}

Index n_experts(const Gate& gate) {
    return std::visit(
        [](const auto& g) -> Index {
            using T = std::decay_t<decltype(g)>;
            if constexpr (std::is_same_v<T, ConstantGate>)
                return g.weights.size();
            else
                return g.coefficients.cols();
        },
        gate);
}

} // namespace moekit
