-- A pod's state as kubectl prints it (STATUS and READY columns: printPod in the
-- apiserver's printers), shared by the client's summaries and the simulator's tables.
local M = {}

--- The STATUS text (Running, CrashLoopBackOff, Init:0/1, Completed, Terminating …) and
--- the READY text ("1/2").
function M.status(pod)
  local status = pod.status or {}
  local reason = status.phase or "Pending"
  if status.reason and status.reason ~= "" then reason = status.reason end
  local init_statuses = status.initContainerStatuses or {}
  local init_count = #((pod.spec or {}).initContainers or {})
  local initializing = false
  for i, c in ipairs(init_statuses) do
    local st = c.state or {}
    if st.terminated and st.terminated.exitCode == 0 then
      -- done
    elseif st.terminated then
      if st.terminated.reason and st.terminated.reason ~= "" then reason = "Init:" .. st.terminated.reason
      elseif st.terminated.signal and st.terminated.signal ~= 0 then reason = "Init:Signal:" .. st.terminated.signal
      else reason = "Init:ExitCode:" .. st.terminated.exitCode end
      initializing = true
      break
    elseif st.waiting and st.waiting.reason and st.waiting.reason ~= "" and st.waiting.reason ~= "PodInitializing" then
      reason = "Init:" .. st.waiting.reason
      initializing = true
      break
    else
      reason = ("Init:%d/%d"):format(i - 1, init_count)
      initializing = true
      break
    end
  end
  local ready, running = 0, false
  local total = #((pod.spec or {}).containers or {})
  local statuses = status.containerStatuses or {}
  if not initializing then
    for i = #statuses, 1, -1 do
      local c = statuses[i]
      local st = c.state or {}
      if st.waiting and st.waiting.reason and st.waiting.reason ~= "" then
        reason = st.waiting.reason
      elseif st.terminated and st.terminated.reason and st.terminated.reason ~= "" then
        reason = st.terminated.reason
      elseif st.terminated then
        reason = (st.terminated.signal and st.terminated.signal ~= 0) and ("Signal:" .. st.terminated.signal)
          or ("ExitCode:" .. tostring(st.terminated.exitCode))
      elseif c.ready and st.running then
        running = true
      end
    end
    if reason == "Completed" and running then
      reason = "Running"
      for _, cond in ipairs(status.conditions or {}) do
        if cond.type == "Ready" and cond.status ~= "True" then reason = "NotReady" end
      end
    end
  end
  for _, c in ipairs(statuses) do if c.ready then ready = ready + 1 end end
  if pod.metadata.deletionTimestamp then
    reason = status.reason == "NodeLost" and "Unknown" or "Terminating"
  end
  return reason, ("%d/%d"):format(ready, total)
end

return M
