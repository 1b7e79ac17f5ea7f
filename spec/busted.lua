-- Runs busted inside vqlua, so that specs use the real runtime (tasks, luv, bindings).
-- ctest calls: vqlua spec/busted.lua [busted options] spec/x_spec.lua
require "busted.runner" { standalone = false }
-- Busted returns here only when every test passed (it exits on failures itself). Exit
-- now: a spec that left a task running (a follower, a simulator it did not stop) would
-- otherwise keep vqlua waiting for it, as vqlua waits for a script's tasks.
os.exit(0)
