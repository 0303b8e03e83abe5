-- Argo CD health check for EfficientTrainingJob (efficienttraining.dev/v1alpha1).
-- Install: the argocd-cm patch beside this file (resource.customizations.health.efficienttraining.dev_EfficientTrainingJob).
-- Semantics follow batch/Job: a job that is still training is Progressing, a finished one Healthy or Degraded,
-- a paused or suspended one Suspended. Argo CD runs this with gopher-lua (Lua 5.1); tests run it with Lua 5.1 too.
local hs = {}

local function find_condition(ctype)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, condition in ipairs(obj.status.conditions) do
    if condition.type == ctype then
      return condition
    end
  end
  return nil
end

local function condition_message(ctype, fallback)
  local condition = find_condition(ctype)
  if condition ~= nil and condition.message ~= nil and condition.message ~= "" then
    return condition.message
  end
  return fallback
end

local function is_true(ctype)
  local condition = find_condition(ctype)
  return condition ~= nil and condition.status == "True"
end

if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report a phase"
  return hs
end

local status = obj.status
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

if is_true("Invalid") then
  hs.status = "Degraded"
  hs.message = condition_message("Invalid", "The spec is invalid")
  return hs
end

local phase = status.phase
local restarts = status.restarts or 0

if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = condition_message("Succeeded", "Training finished")
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = condition_message("Failed", "Training failed")
elseif phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = condition_message("Suspended", "spec.suspend is true; the job's pods are deleted")
elseif phase == "Paused" then
  hs.status = "Suspended"
  hs.message = "Paused by an energy policy; resumes from the last checkpoint"
elseif phase == "Queued" then
  hs.status = "Suspended"
  hs.message = condition_message("Queued", "Waiting for Kueue to admit the job's Workload")
elseif phase == "Pending" then
  hs.status = "Progressing"
  hs.message = "Waiting for the worker pods to run"
elseif phase == "Running" then
  hs.status = "Progressing"
  hs.message = "Training"
  if status.workload ~= nil and status.workload.step ~= nil then
    hs.message = "Training: step " .. tostring(status.workload.step)
  end
elseif phase == "Restarting" then
  hs.status = "Progressing"
  hs.message = "Restarting the gang after a worker failed (restarts: " .. tostring(restarts) .. ")"
elseif phase == "Throttled" then
  hs.status = "Progressing"
  hs.message = "Training under a lowered GPU power limit"
  if status.control ~= nil and status.control.powerLimitWattsPerGPU ~= nil then
    hs.message = hs.message .. " of " .. tostring(status.control.powerLimitWattsPerGPU) .. " W per GPU"
  end
elseif phase == "Rescheduling" then
  hs.status = "Progressing"
  hs.message = "Moving the job to other nodes after a checkpoint"
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
