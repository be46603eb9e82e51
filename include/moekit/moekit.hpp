#pragma once
/// @file moekit.hpp
/// Umbrella header: everything public in moekit.

#include "moekit/covariance.hpp"
#include "moekit/csv.hpp"
#include "moekit/dataset.hpp"
#include "moekit/errors.hpp"
#include "moekit/experts.hpp"
#include "moekit/fit.hpp"
#include "moekit/gates.hpp"
#include "moekit/log_sum_exp.hpp"
#include "moekit/model.hpp"
#include "moekit/model_io.hpp"
#include "moekit/rng.hpp"
#include "moekit/simulate.hpp"
#include "moekit/types.hpp"
