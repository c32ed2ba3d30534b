-- Argo CD health of a mailfleet IPWarmup, from status.phase. A warm-up that advances on
-- plan is Healthy (it takes weeks; Progressing for weeks would hide real problems and hold
-- every later sync wave). Held and RolledBack need a human: Degraded. Paused: Suspended.
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

if obj.status == nil or obj.status.phase == nil then
  return hs
end
local status = obj.status
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end

local day = status.day or 0
local quota = status.dailyQuota or 0
local progress = "day " .. day .. ", quota " .. quota .. "/day, sent today " .. (status.sentToday or 0)
local ready = condition(status.conditions, "Ready")
local held = condition(status.conditions, "Held")

if status.phase == "Completed" then
  hs.status = "Healthy"
  hs.message = "Warm-up complete on day " .. day .. " at " .. quota .. "/day"
elseif status.phase == "WarmingUp" then
  hs.status = "Healthy"
  hs.message = "Warming up: " .. progress
elseif status.phase == "Held" then
  hs.status = "Degraded"
  hs.message = "Held on " .. progress .. ": " .. text(held, text(ready, "a safety gate is broken"))
elseif status.phase == "RolledBack" then
  hs.status = "Degraded"
  hs.message = "Rolled back to " .. progress .. ": " .. text(held, text(ready, "a safety gate is broken"))
elseif status.phase == "Paused" then
  hs.status = "Suspended"
  hs.message = "Paused on " .. progress
elseif status.phase == "Pending" then
  hs.status = "Progressing"
  hs.message = text(ready, "Waiting for the pool's IPs")
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. status.phase
end
return hs
