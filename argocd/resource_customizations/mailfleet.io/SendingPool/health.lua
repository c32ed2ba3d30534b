-- Argo CD health of a mailfleet SendingPool, read from the conditions the operator writes
-- (Ready, Degraded, FailingOver, Progressing, Paused). A failover in progress is
-- Progressing, not Degraded: mail keeps flowing from the standby while the IP moves.
local hs = { status = "Progressing", message = "Waiting for the operator to report status" }

local function condition(conditions, kind)
  if conditions == nil then return nil end
  for _, c in ipairs(conditions) do
    if c.type == kind then return c end
  end
  return nil
end

local function text(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then return c.message end
  if c ~= nil and c.reason ~= nil then return c.reason end
  return fallback
end

if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end

local conditions = obj.status.conditions
local ready = condition(conditions, "Ready")
local degraded = condition(conditions, "Degraded")
local failing = condition(conditions, "FailingOver")
local progressing = condition(conditions, "Progressing")
local paused = condition(conditions, "Paused")

if paused ~= nil and paused.status == "True" then
  hs.status = "Suspended"
  hs.message = text(paused, "Paused")
  return hs
end
if failing ~= nil and failing.status == "True" then
  hs.status = "Progressing"
  hs.message = "Failing over: " .. text(failing, "egress IPs are moving to standby senders")
  return hs
end
if ready == nil or ready.status == "Unknown" then
  hs.message = text(ready, "Waiting for the Ready condition")
  return hs
end
if ready.status == "False" then
  if progressing ~= nil and progressing.status == "True" then
    hs.status = "Progressing"
    hs.message = text(progressing, text(ready, "Not ready yet"))
  else
    hs.status = "Degraded"
    hs.message = text(ready, "Not ready")
  end
  return hs
end
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = text(degraded, "Running with reduced capacity")
  return hs
end
if progressing ~= nil and progressing.status == "True" then
  hs.status = "Progressing"
  hs.message = text(progressing, "Reconciling")
  return hs
end
hs.status = "Healthy"
hs.message = text(ready, "Ready")
return hs
