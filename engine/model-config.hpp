// Compatibility include: model_config now lives in the model layer.
#pragma once
#include "model/model-config.hpp"
