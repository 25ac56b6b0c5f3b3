#pragma once
// See csrc/gloo_decl/gloo/README.md: everything is declared in context.h.
#include <gloo/context.h>
