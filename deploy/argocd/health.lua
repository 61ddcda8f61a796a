-- Argo CD health of an AuditStream or AuditConsumer (audit.eventsaudit.io), read from the
-- kstatus status the operator writes: exactly one of the conditions Ready, Reconciling and
-- Stalled is True, and status.observedGeneration says which spec the conditions describe.
--
-- Argo CD runs a health script in a Lua 5.1 VM with only the base, table and (safe) os
-- libraries, so this script uses no string, math or io function and no string methods.
-- It is installed under resource.customizations.health.audit.eventsaudit.io_AuditStream and
-- ..._AuditConsumer in argocd-cm (deploy/argocd/argocd-cm.yaml, generated from this file).

local function with_reason(condition)
  if condition.reason ~= nil and condition.reason ~= "" then
    return condition.reason .. ": " .. (condition.message or "")
  end
  return condition.message or ""
end

local status = obj.status
if status == nil or status.observedGeneration == nil then
  return {
    status = "Progressing",
    message = "Waiting for audit-operator to report on this " .. obj.kind,
  }
end

-- A status written for an older spec says nothing about the current one: the operator has
-- not acted on the latest change yet.
local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= generation then
  return {
    status = "Progressing",
    message = "Waiting for audit-operator to apply generation " .. generation
      .. " (the status describes generation " .. status.observedGeneration .. ")",
  }
end

local conditions = {}
for _, condition in ipairs(status.conditions or {}) do
  conditions[condition.type] = condition
end

-- Stalled first: it needs a change from a person, and its message says which.
if conditions.Stalled ~= nil and conditions.Stalled.status == "True" then
  return { status = "Degraded", message = with_reason(conditions.Stalled) }
end
if conditions.Reconciling ~= nil and conditions.Reconciling.status == "True" then
  return { status = "Progressing", message = with_reason(conditions.Reconciling) }
end
if conditions.Ready ~= nil and conditions.Ready.status == "True" then
  return { status = "Healthy", message = conditions.Ready.message or "" }
end
return {
  status = "Progressing",
  message = "Waiting for audit-operator: no condition is True yet",
}
