-- Argo CD health of a mailfleet DomainAuth. Healthy once Ready (an active DKIM key that DNS
-- shows, valid SPF and DMARC). Waiting for DNS to show a record that was just published is
-- Progressing; a record that is wrong, a broken key Secret or an invalid spec is Degraded.
local hs = { status = "Progressing", message = "Waiting for the operator to report status" }

-- Reasons that mean "wait": the operator is generating a key, or DNS does not show a
-- record yet (in Manual mode: until you publish status.records).
local waiting = {
  AwaitingDNS = true, KeyPending = true, NotPublished = true, NotChecked = true,
  LookupFailed = true,
}

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
local stalled = condition(conditions, "DKIMRotationStalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = "DKIM rotation stalled: " .. text(stalled, "the new key is not in DNS")
  return hs
end

local ready = condition(conditions, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = text(condition(conditions, "DKIMReady"), text(ready, "Ready"))
  return hs
end

-- Not ready: the first failing condition that is not a wait decides.
for _, c in ipairs(conditions) do
  if c.type ~= "Ready" and c.status == "False" and not waiting[c.reason] then
    hs.status = "Degraded"
    hs.message = c.type .. ": " .. text(c, "failed")
    return hs
  end
end
for _, c in ipairs(conditions) do
  if c.type ~= "Ready" and c.status ~= "True" and waiting[c.reason] then
    hs.status = "Progressing"
    hs.message = c.type .. ": " .. text(c, "waiting")
    return hs
  end
end
if ready ~= nil and ready.status == "False" and not waiting[ready.reason] then
  hs.status = "Degraded"
  hs.message = text(ready, "Not ready")
  return hs
end
hs.message = text(ready, "Waiting for the Ready condition")
return hs
