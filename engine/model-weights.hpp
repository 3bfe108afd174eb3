// Compatibility include: model_weights, the loader and synthetic models now live in the model layer.
#pragma once
#include "model/weights.hpp"
