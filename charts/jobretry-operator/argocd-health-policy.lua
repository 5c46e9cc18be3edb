-- Argo CD health check for jobretry.io/JobRetryPolicy. Install it under
-- `resource.customizations.health.jobretry.io_JobRetryPolicy` in the argocd-cm ConfigMap (see
-- the README). A policy is healthy while it can create its runs; its runs have their own
-- health (argocd-health.lua):
--   not yet seen by the operator (observedGeneration behind)        -> Progressing
--   the loop guard holds it (status.guard; condition Suspended,
--     reason RefailRateHigh): its retries keep failing again       -> Degraded
--   Stalled (a Secret, Redis or a schedule that needs a fix)         -> Degraded
--   spec.suspend                                                     -> Suspended
--   otherwise                                                        -> Healthy, with its last run
local hs = { status = "Progressing", message = "waiting for the operator" }
if obj.status == nil then
  return hs
end
local st = obj.status
local generation = obj.metadata and obj.metadata.generation or 0
if st.observedGeneration == nil or st.observedGeneration < generation then
  return hs
end

local function condition(kind)
  if st.conditions == nil then return nil end
  for _, c in ipairs(st.conditions) do
    if c.type == kind then return c end
  end
  return nil
end

local function n(v)
  if v == nil then return 0 end
  return v
end

local stalled = condition("Stalled")
if st.guard ~= nil then
  hs.status = "Degraded"
  hs.message = "loop guard: " .. n(st.guard.refailedPercent) ..
    "% of a run's jobs had been retried before; resume with `kubectl jobretry resume` or change the spec"
elseif stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = stalled.reason .. ": " .. stalled.message
elseif obj.spec ~= nil and obj.spec.suspend then
  hs.status = "Suspended"
  hs.message = "suspended"
else
  hs.status = "Healthy"
  local active = 0
  if st.active ~= nil then active = #st.active end
  hs.message = n(st.runsCreated) .. " runs, " .. active .. " active, " .. n(st.jobsRetried) ..
    " jobs retried, " .. n(st.jobsParked) .. " parked"
end
return hs
