-- Argo CD health check for ModelGuard TrainingJobs (ml.modelguard.dev).
--
-- It reads the kstatus conditions the operator writes (Ready, Reconciling,
-- Stalled), the protection conditions (OutputSealed included) and
-- status.phase:
--   Degraded     Stalled, a protection condition False for a failure reason,
--                or phase Failed
--   Suspended    phase Pending while the job waits for admission by its
--                Kueue queue (reason Queued)
--   Progressing  no status yet, observedGeneration behind, Reconciling
--                (admitted, running, sealing)
--   Healthy      Ready (the job succeeded and sealed its output) and the
--                status describes the current generation
-- The message is the failing (or deciding) condition's message.
--
-- Only Lua's base library is used, so the script runs with Argo CD's default
-- of no standard libraries for custom health checks.

-- Reasons of a False condition: true means a person must act (Degraded),
-- false that the operator is still working. Every reason the API defines is
-- listed, and a test keeps it that way; a reason not listed counts as a
-- failure, so that a new failure shows up rather than hides.
local failureReasons = {
  Reconciled = false,
  Progressing = false,
  RollingOut = false,
  Available = false,
  Unavailable = false,
  ScaledToZero = false,
  MemoryTooSmall = true,
  FailClosed = true,
  SealedBundle = false,
  VerificationPending = false,
  DigestVerified = false,
  DigestMismatch = true,
  BundleTampered = true,
  UnsealFailed = true,
  -- Events of the admission guard, never condition reasons.
  BreakGlass = false,
  AccessDenied = false,
  KeyReleaseDenied = true,
  KeyReleasable = false,
  SecretNotFound = true,
  KeyNotInSecret = true,
  UnwrapFailed = true,
  ProviderUnavailable = true,
  PolicyApplied = false,
  PolicyNotApplied = true,
  ForeignPolicyAllows = true,
  BundleHostNotAllowed = true,
  PodSecurityRestricted = false,
  PodSecurityViolation = true,
  PodSpecDrift = true,
  NamespaceNotEnforced = true,
  Scheduled = false,
  Unschedulable = true,
  SchedulingPending = false,
  NoGPURequested = false,
  Annotated = false,
  Queued = false,
  Admitted = false,
  Running = false,
  Succeeded = false,
  BackoffLimitExceeded = true,
  DeadlineExceeded = true,
  Sealing = false,
  Sealed = false,
  SealFailed = true,
  StorageNotEncrypted = true,
  -- ModelKeys and key release. A False condition with a denial reason
  -- means the workload's own pods are refused their key.
  SelfTestPassed = false,
  SelfTestFailed = true,
  KeyNotPermitted = true,
  ModelKeyNotFound = true,
  ModelKeyNotReady = true,
  KeyReleased = false,
  KeyWrapped = false,
  TokenRejected = true,
  PodNotFound = true,
  OwnerChainBroken = true,
  PodSpecMismatch = true,
  EphemeralContainers = true,
  UnsealNotRunning = true,
  AlreadyReleased = true,
  ModelStalled = true,
  BadRequest = true,
  VerifierUnavailable = false,
}

local protectionConditions = {
  "WeightsEncrypted",
  "WeightsVerified",
  "KeyAvailable",
  "NetworkIsolated",
  "Hardened",
  "GPUScheduled",
  "OwnershipRecorded",
  "OutputSealed",
}

local function findCondition(conditions, conditionType)
  for _, c in ipairs(conditions) do
    if c.type == conditionType then
      return c
    end
  end
  return nil
end

local function messageOf(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local hs = {}
local status = obj.status
if status == nil or status.conditions == nil or #status.conditions == 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for ModelGuard to report the job's status"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for ModelGuard to observe generation " .. tostring(generation)
  return hs
end

local stalled = findCondition(status.conditions, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = messageOf(stalled, "ModelGuard cannot make progress: " .. tostring(stalled.reason))
  return hs
end

for _, conditionType in ipairs(protectionConditions) do
  local c = findCondition(status.conditions, conditionType)
  if c ~= nil and c.status == "False" and failureReasons[c.reason] ~= false then
    hs.status = "Degraded"
    hs.message = conditionType .. ": " .. messageOf(c, tostring(c.reason))
    return hs
  end
end

local ready = findCondition(status.conditions, "Ready")
if status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = messageOf(ready, "The training job failed")
  return hs
end

local reconciling = findCondition(status.conditions, "Reconciling")
if status.phase == "Pending" then
  local queued = nil
  if reconciling ~= nil and reconciling.reason == "Queued" then
    queued = reconciling
  elseif ready ~= nil and ready.reason == "Queued" then
    queued = ready
  end
  if queued ~= nil then
    hs.status = "Suspended"
    hs.message = "Waiting for Kueue admission: " .. messageOf(queued, "queued")
    return hs
  end
end
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = messageOf(reconciling, "ModelGuard is running the training job")
  return hs
end

if ready ~= nil and ready.status == "True" then
  if generation ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration < generation then
    hs.status = "Progressing"
    hs.message = "Waiting for ModelGuard to observe generation " .. tostring(generation)
    return hs
  end
  hs.status = "Healthy"
  hs.message = messageOf(ready, "The training job succeeded")
  return hs
end

hs.status = "Progressing"
hs.message = messageOf(ready, "Waiting for the training job to finish")
return hs
