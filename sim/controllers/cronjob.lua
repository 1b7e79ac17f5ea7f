-- The CronJob controller: keeps status.active and the last schedule and success times,
-- notes the Jobs it saw finish, deletes finished Jobs beyond the history limits, and
-- starts Jobs by spec.schedule (five-field cron, on the simulator's clock, which a
-- scenario may advance) with suspend, startingDeadlineSeconds and concurrencyPolicy.
local util = require "sim.util"
local R = require "sim.controllers.runtime"
local job_ctl = require "sim.controllers.job"

local M = {}

local KEY, JOBS = "cronjobs.batch", "jobs.batch"
local COMPONENT = "cronjob-controller"
local MAX_WAIT = 1        -- real seconds between looks at the clock, which may be advanced
local array = R.array

-- ---- cron ----

local MACROS = {
  ["@yearly"] = "0 0 1 1 *", ["@annually"] = "0 0 1 1 *", ["@monthly"] = "0 0 1 * *",
  ["@weekly"] = "0 0 * * 0", ["@daily"] = "0 0 * * *", ["@midnight"] = "0 0 * * *", ["@hourly"] = "0 * * * *",
}
local RANGES = { { 0, 59 }, { 0, 23 }, { 1, 31 }, { 1, 12 }, { 0, 7 } }
local NAMES = {
  [4] = { jan = 1, feb = 2, mar = 3, apr = 4, may = 5, jun = 6, jul = 7, aug = 8, sep = 9, oct = 10, nov = 11, dec = 12 },
  [5] = { sun = 0, mon = 1, tue = 2, wed = 3, thu = 4, fri = 5, sat = 6 },
}

local function value(text, field)
  local n = tonumber(text)
  if n then return n end
  return NAMES[field] and NAMES[field][text:lower()]
end

local function parse_field(text, field)
  local lo, hi = RANGES[field][1], RANGES[field][2]
  local set = {}
  for part in text:gmatch("[^,]+") do
    local range, step = part:match("^(.-)/(%d+)$")
    range, step = range or part, tonumber(step) or 1
    local a, b
    if range == "*" or range == "?" then
      a, b = lo, hi
    elseif range:find("-", 1, true) then
      local x, y = range:match("^(%w+)%-(%w+)$")
      a, b = x and value(x, field), y and value(y, field)
    else
      a = value(range, field)
      b = (part:find("/", 1, true) and hi) or a
    end
    if not a or not b or a < lo or b > hi or a > b or step < 1 then return nil end
    for i = a, b, step do set[i] = true end
  end
  if field == 5 and set[7] then set[0] = true end
  return set
end

--- A parsed schedule, or nil and the reason.
function M.parse(schedule)
  schedule = (schedule or ""):gsub("^%s*CRON_TZ=%S+%s+", ""):gsub("^%s*TZ=%S+%s+", "")
  schedule = MACROS[schedule:match("^%s*(.-)%s*$")] or schedule
  local parts = {}
  for p in schedule:gmatch("%S+") do parts[#parts + 1] = p end
  if #parts ~= 5 then return nil, ("expected exactly 5 fields, found %d: %s"):format(#parts, schedule) end
  local s = { stars = {} }
  for i = 1, 5 do
    s[i] = parse_field(parts[i], i)
    if not s[i] then return nil, ("failed to parse field %d: %s"):format(i, parts[i]) end
    s.stars[i] = parts[i] == "*" or parts[i] == "?"
  end
  return s
end

local function days_from_civil(y, m, d)
  y = m <= 2 and y - 1 or y
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local doy = (153 * (m + (m > 2 and -3 or 9)) + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return era * 146097 + doe - 719468
end

local function epoch(y, m, d, h, mi)
  while m > 12 do y, m = y + 1, m - 12 end
  return days_from_civil(y, m, 1) * 86400 + (d - 1) * 86400 + h * 3600 + mi * 60
end

local function day_matches(s, t)
  local dom, dow = s[3][t.day], s[5][t.wday - 1]
  if s.stars[3] and s.stars[5] then return true end
  if s.stars[3] then return dow end
  if s.stars[5] then return dom end
  return dom or dow
end

--- The first time strictly after `after` (seconds) that the schedule names, in UTC.
function M.next_time(s, after)
  local t = (math.floor(after / 60) + 1) * 60
  for _ = 1, 100000 do
    local d = os.date("!*t", t)
    if not s[4][d.month] then
      t = epoch(d.year, d.month + 1, 1, 0, 0)
    elseif not day_matches(s, d) then
      t = epoch(d.year, d.month, d.day + 1, 0, 0)
    elseif not s[2][d.hour] then
      t = epoch(d.year, d.month, d.day, d.hour + 1, 0)
    elseif not s[1][d.min] then
      t = t + 60
    else
      return t
    end
  end
end

-- ---- the controller ----

local function job_ref(job)
  return { kind = "Job", namespace = job.metadata.namespace, name = job.metadata.name, uid = job.metadata.uid,
           apiVersion = "batch/v1", resourceVersion = job.metadata.resourceVersion }
end

local function delete_job(sim, cj, job)
  sim:delete(JOBS, job, { propagation = "Background" })
  sim.event(cj, "Normal", "SuccessfulDelete", "Deleted job " .. job.metadata.name, COMPONENT)
end

local function trim_history(sim, cj, jobs)
  local done = { Complete = {}, Failed = {} }
  for _, job in ipairs(jobs) do
    local fin = job_ctl.finished(job)
    if fin and not job.metadata.deletionTimestamp then table.insert(done[fin], job) end
  end
  local limits = { Complete = cj.spec.successfulJobsHistoryLimit or 3, Failed = cj.spec.failedJobsHistoryLimit or 1 }
  for kind, list in pairs(done) do
    table.sort(list, function(a, b)
      local ta = (a.status or {}).startTime or a.metadata.creationTimestamp or ""
      local tb = (b.status or {}).startTime or b.metadata.creationTimestamp or ""
      return ta < tb
    end)
    for i = 1, #list - limits[kind] do delete_job(sim, cj, list[i]) end
  end
end

local function new_job(cj, scheduled)
  local t = cj.spec.jobTemplate or {}
  local meta = t.metadata or {}
  local annotations = util.copy(meta.annotations or {})
  annotations["batch.kubernetes.io/cronjob-scheduled-timestamp"] = util.rfc3339(scheduled)
  return {
    metadata = { name = ("%s-%d"):format(cj.metadata.name, scheduled // 60), namespace = cj.metadata.namespace,
                 labels = util.copy(meta.labels or {}), annotations = annotations,
                 ownerReferences = array { R.owner_ref(cj, "CronJob", "batch/v1") } },
    spec = util.copy(t.spec or {}),
  }
end

--- Start the Job of the latest missed schedule time, if the policies allow. Returns the
--- time of the next schedule.
local function run_schedule(sim, cj, st, active_jobs)
  local sched, err = M.parse(cj.spec.schedule)
  if not sched then
    sim.event(cj, "Warning", "UnparseableSchedule", ("unparseable schedule: %q : %s"):format(cj.spec.schedule or "", err), COMPONENT)
    return nil
  end
  local now = sim.clock:now()
  local since = util.parse_time(st.lastScheduleTime) or util.parse_time(cj.metadata.creationTimestamp) or now
  local due = M.next_time(sched, since)
  if not due or due > now then return due end
  local missed = 0
  while true do
    local later = M.next_time(sched, due)
    if not later or later > now then break end
    due, missed = later, missed + 1
    if missed > 100 then break end
  end
  if missed >= 100 then
    sim.event(cj, "Warning", "TooManyMissedTimes", "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew", COMPONENT)
  end
  local deadline = cj.spec.startingDeadlineSeconds
  if cj.spec.suspend or (deadline and now - due > deadline) then return M.next_time(sched, now) end
  local policy = cj.spec.concurrencyPolicy or "Allow"
  if policy == "Forbid" and #active_jobs > 0 then
    sim.event(cj, "Normal", "JobAlreadyActive", "Not starting job because prior execution is running and concurrency policy is Forbid", COMPONENT)
    return M.next_time(sched, now)
  end
  if policy == "Replace" then
    for _, job in ipairs(active_jobs) do delete_job(sim, cj, job) end
  end
  local job = new_job(cj, due)
  local created = sim:get(JOBS, job.metadata.namespace, job.metadata.name) or sim:create(JOBS, job)
  if created then
    sim.event(cj, "Normal", "SuccessfulCreate", "Created job " .. created.metadata.name, COMPONENT)
    st.lastScheduleTime = util.rfc3339(due)
  end
  return M.next_time(sched, now)
end

local function sync(sim, rt, ctl, ns, name)
  local cj = sim:get(KEY, ns, name)
  if not cj or cj.metadata.deletionTimestamp then return end
  local st = util.copy(cj.status or {})
  local jobs = rt:owned(JOBS, cj)
  local active, active_jobs = array(), {}
  for _, job in ipairs(jobs) do
    local fin = job_ctl.finished(job)
    local uid = job.metadata.uid
    if not fin then
      if not job.metadata.deletionTimestamp then
        active[#active + 1] = job_ref(job)
        active_jobs[#active_jobs + 1] = job
        rt.cron_tracked[uid] = true
      end
    elseif rt.cron_tracked[uid] then
      rt.cron_tracked[uid] = nil
      sim.event(cj, "Normal", "SawCompletedJob", ("Saw completed job: %s, status: %s"):format(job.metadata.name, fin), COMPONENT)
      local done_at = (job.status or {}).completionTime
      if fin == "Complete" and done_at and (not st.lastSuccessfulTime or done_at > st.lastSuccessfulTime) then
        st.lastSuccessfulTime = done_at
      end
    end
  end
  local due = cj.spec.schedule and not cj.spec.suspend and run_schedule(sim, cj, st, active_jobs)
  if due then
    active, active_jobs = array(), {}
    for _, job in ipairs(rt:owned(JOBS, cj)) do
      if not job_ctl.finished(job) and not job.metadata.deletionTimestamp then
        active[#active + 1] = job_ref(job)
        rt.cron_tracked[job.metadata.uid] = true
      end
    end
    ctl:after(math.max(0.05, math.min(due - sim.clock:now(), MAX_WAIT)), ns, name, true)
  end
  st.active = #active > 0 and active or nil
  rt:write_status(KEY, cj, st)
  trim_history(sim, cj, rt:owned(JOBS, cj))
end

function M.install(sim, rt)
  rt.cron_tracked = {}
  local ctl
  ctl = rt:controller("cronjob", function(ns, name) sync(sim, rt, ctl, ns, name) end)
  rt:watch(KEY, function(ev)
    if ev.type ~= "DELETED" then ctl:enqueue(ev.object.metadata.namespace, ev.object.metadata.name) end
  end)
  rt:watch(JOBS, function(ev)
    local ref = R.controller_of(ev.object)
    if ref and ref.kind == "CronJob" then ctl:enqueue(ev.object.metadata.namespace, ref.name) end
  end)
  rt.cronjobs = ctl
end

function M.started(sim, rt)
  for _, cj in ipairs(sim:list(KEY, nil)) do rt.cronjobs:enqueue(cj.metadata.namespace, cj.metadata.name) end
end

return M
