#include "moekit/model.hpp"

#include "moekit/errors.hpp"
#include "moekit/log_sum_exp.hpp"

#include <cmath>
#include <string>

namespace moekit {

Matrix log_joint(const Model& model, const Dataset& data) {
    Matrix out = expert_log_densities(model.experts, data);
    out += gate_log_probabilities(model.gate, data);
    return out;
}

Responsibilities e_step(const Model& model, const Dataset& data) {
    Responsibilities r;
    r.log_resp = log_joint(model, data);
    r.log_norm = log_softmax_rows_in_place(r.log_resp);
    return r;
}

Vector log_likelihood_samples(const Model& model, const Dataset& data) {
    return log_sum_exp_rows(log_joint(model, data));
}

double log_likelihood(const Model& model, const Dataset& data) {
    return data.weights.dot(log_likelihood_samples(model, data));
}

Matrix gate_probabilities(const Model& model, const Dataset& data) {
    return gate_log_probabilities(model.gate, data).array().exp().matrix();
}

Matrix predict_mean(const Model& model, const Dataset& data) {
    const Matrix g = gate_probabilities(model, data);
    Matrix mean = Matrix::Zero(data.n_samples(), model.experts.n_outputs());
    for (Index k = 0; k < model.n_experts(); ++k)
        mean += (expert_mean(model.experts, data, k).array().colwise() * g.col(k).array()).matrix();
    return mean;
}

Eigen::VectorXi predict_expert(const Model& model, const Dataset& data) {
    const Matrix log_g = gate_log_probabilities(model.gate, data);
    Eigen::VectorXi out(log_g.rows());
    for (Index i = 0; i < log_g.rows(); ++i) {
        Index best = 0;
        log_g.row(i).maxCoeff(&best);
        out(i) = static_cast<int>(best);
    }
    return out;
}

Index n_parameters(const Model& model) {
    return n_parameters(model.gate) + n_parameters(model.experts);
}

namespace {

[[noreturn]] void invalid_model(const char* function, const std::string& what, const std::string& requirement) {
    throw_invalid_argument(function, what, "inconsistent", requirement, "The model is corrupt; refit it.");
}

std::string expert_name(Index k) { return "expert " + std::to_string(k + 1); }

} // namespace

void validate(const Model& model, const char* function) {
    const Experts& e = model.experts;
    const Index K = e.n_experts();
    if (K < 1)
        throw_invalid_argument(function, "n_experts", std::to_string(K), "must be >= 1");
    if (static_cast<Index>(e.covariances.size()) != K)
        invalid_model(function, "the number of covariances", "must equal the number of experts");
    if (n_experts(model.gate) != K)
        invalid_model(function, "the gate", "must have one column per expert");
    const Index q = e.n_outputs();
    const Index p = e.coefficients[0].rows();
    if (q < 1) invalid_model(function, "the number of targets", "must be >= 1");
    if (e.kind == ExpertKind::Gaussian && p != 1)
        invalid_model(function, "a Gaussian expert's mean", "must be one row");
    for (Index k = 0; k < K; ++k) {
        const auto uk = static_cast<std::size_t>(k);
        const Matrix& w = e.coefficients[uk];
        if (w.rows() != p || w.cols() != q)
            invalid_model(function, expert_name(k) + " coefficients", "must all have the same shape");
        if (!w.allFinite()) invalid_model(function, expert_name(k) + " coefficients", "must be finite");
        const CovarianceFactor& c = e.covariances[uk];
        if (c.covariance.rows() != q || c.covariance.cols() != q || c.lower.rows() != q || c.lower.cols() != q)
            invalid_model(function, expert_name(k) + " covariance", "must be q×q");
        if (!c.covariance.allFinite() || !c.lower.allFinite() || !std::isfinite(c.log_det))
            invalid_model(function, expert_name(k) + " covariance", "must be finite");
        const double scale = c.covariance.cwiseAbs().maxCoeff();
        if (!((c.lower * c.lower.transpose() - c.covariance).cwiseAbs().maxCoeff() <= 1e-10 * scale) ||
            !(c.lower.diagonal().array() > 0.0).all())
            invalid_model(function, expert_name(k) + " covariance", "must be SPD with a matching Cholesky factor");
        const Matrix off = c.covariance - Matrix(c.covariance.diagonal().asDiagonal());
        if ((e.covariance_type == CovarianceType::Diag || e.covariance_type == CovarianceType::Spherical) &&
            off.cwiseAbs().maxCoeff() > 0.0)
            invalid_model(function, expert_name(k) + " covariance", "must be diagonal for this covariance type");
        if (e.covariance_type == CovarianceType::Spherical &&
            c.covariance.diagonal().maxCoeff() != c.covariance.diagonal().minCoeff())
            invalid_model(function, expert_name(k) + " covariance", "must be a multiple of the identity");
        if (e.covariance_type == CovarianceType::Tied && c.covariance != e.covariances[0].covariance)
            invalid_model(function, expert_name(k) + " covariance", "must equal the shared (tied) covariance");
    }
    if (static_cast<Index>(model.target_names.size()) != q)
        invalid_model(function, "target names", "must name every target");
    if (static_cast<Index>(model.input_names.size()) != p - 1)
        invalid_model(function, "input names", "must name every expert input");
    if (const auto* g = std::get_if<ConstantGate>(&model.gate)) {
        if (!g->weights.allFinite() || (g->weights.array() < 0.0).any())
            invalid_model(function, "the gate weights", "must be finite and non-negative");
        if (std::abs(g->weights.sum() - 1.0) > 1e-9)
            invalid_model(function, "the gate weights", "must sum to 1");
        if (!model.gate_input_names.empty())
            invalid_model(function, "gate input names", "must be empty for a constant gate");
    } else {
        const Matrix& v = std::get<SoftmaxGate>(model.gate).coefficients;
        if (!v.allFinite()) invalid_model(function, "the gate coefficients", "must be finite");
        if (!v.col(0).isZero(0.0)) invalid_model(function, "the gate coefficients", "must have column 0 equal to 0");
        if (static_cast<Index>(model.gate_input_names.size()) != v.rows() - 1)
            invalid_model(function, "gate input names", "must name every gate input");
    }
}

void check_compatible(const Model& model, const Dataset& data, bool need_targets, const char* function) {
    const Index d = model.experts.n_inputs();
    const Index q = model.experts.n_outputs();
    Index g = 0;
    if (const auto* s = std::get_if<SoftmaxGate>(&model.gate)) g = s->coefficients.rows() - 1;
    if (data.x.cols() != d)
        throw_invalid_argument(function, "the number of expert inputs", std::to_string(data.x.cols()),
                               "the model needs " + std::to_string(d));
    if (data.z.cols() != g)
        throw_invalid_argument(function, "the number of gate inputs", std::to_string(data.z.cols()),
                               "the model needs " + std::to_string(g));
    if ((need_targets || data.y.cols() > 0) && data.y.cols() != q)
        throw_invalid_argument(function, "the number of targets", std::to_string(data.y.cols()),
                               "the model needs " + std::to_string(q));
}

} // namespace moekit
