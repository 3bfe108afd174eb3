// The tokenizer moved to its own folder (tokenizer/, library infer_tokenizer); this header
// stays so that code written against engine/tokenizer.hpp keeps compiling.
#pragma once
#include "tokenizer/tokenizer.hpp"
