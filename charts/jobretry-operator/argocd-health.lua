-- Argo CD health check for jobretry.io/JobRetry. Install it under
-- `resource.customizations.health.jobretry.io_JobRetry` in the argocd-cm ConfigMap (see the
-- README). Maps the run's phase and conditions to Argo CD's health:
--   Running, Pending (starting, or waiting for Redis or a busy queue) -> Progressing
--   Succeeded                                                         -> Healthy
--   PartiallySucceeded: the request ran; jobs that were missing or
--     not in the state are information, not damage                   -> Healthy, with counts
--   Failed, or Stalled (waiting for a fix: a Secret, a password...)   -> Degraded
--   Suspended                                                         -> Suspended
local hs = { status = "Progressing", message = "waiting for the operator" }
if obj.status == nil then
  return hs
end
local st = obj.status

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

local function counts()
  return n(st.retried) .. " retried, " .. n(st.skipped) .. " skipped, " .. n(st.errors) ..
    " errors of " .. n(st.matched) .. " matched"
end

local phase = st.phase
local stalled = condition("Stalled")
if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = counts()
elseif phase == "PartiallySucceeded" then
  hs.status = "Healthy"
  hs.message = "partially succeeded: " .. counts()
elseif phase == "Failed" then
  local failed = condition("Failed")
  hs.status = "Degraded"
  hs.message = failed and (failed.reason .. ": " .. failed.message) or "failed"
elseif phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = "suspended after " .. n(st.processed) .. " of " .. n(st.matched) .. " jobs"
elseif stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = stalled.reason .. ": " .. stalled.message
else
  local reconciling = condition("Reconciling")
  hs.status = "Progressing"
  if reconciling ~= nil and reconciling.message ~= "" then
    hs.message = reconciling.reason .. ": " .. reconciling.message
  else
    hs.message = "processed " .. n(st.processed) .. " of " .. n(st.matched) .. " jobs"
  end
end
return hs
