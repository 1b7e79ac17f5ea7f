-- Comparing a file before and after an in-place edit, line by line.
local assert = require "luassert"

local M = {}

--- Physical lines, each with its line ending, so that a diff sees a changed ending too.
function M.lines_of(text)
  local out = {}
  for line in text:gmatch("[^\n]*\n?") do
    if line ~= "" then out[#out + 1] = line end
  end
  return out
end

--- The line numbers that differ between two texts of the same number of lines (asserted),
--- and the new text's lines.
function M.changed_lines(a, b)
  local la, lb = M.lines_of(a), M.lines_of(b)
  assert.are.equal(#la, #lb, "the edit added or removed lines")
  local changed = {}
  for i = 1, #la do
    if la[i] ~= lb[i] then changed[#changed + 1] = i end
  end
  return changed, lb
end

return M
