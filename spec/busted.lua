-- Runs busted inside vqlua, so that specs use the real runtime (tasks, luv, bindings).
-- ctest calls: vqlua spec/busted.lua [busted options] spec/x_spec.lua
require "busted.runner" { standalone = false }
