"""Response models. Request parameters are plain keyword arguments on the resource methods."""

from .chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    Choice,
    ChoiceDelta,
    ChunkChoice,
    CompletionUsage,
)
from .estimates import Estimate, GpuFit
from .files import FileDeleted, FileObject, FileValidationReport, ValidationLineError, ValidationWarning
from .fine_tuning import (
    TERMINAL_STATUSES,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobError,
    FineTuningJobEvent,
    Hyperparameters,
    JobStatus,
    Method,
    MethodSection,
)
from .models import Model, ModelDeleted
from .webhooks import (
    WebhookDeliveryAttempt,
    WebhookEndpoint,
    WebhookEndpointDeleted,
    WebhookEndpointWithSecret,
    WebhookEvent,
    WebhookTestResult,
)

__all__ = [
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionMessage",
    "Choice",
    "ChoiceDelta",
    "ChunkChoice",
    "CompletionUsage",
    "Estimate",
    "GpuFit",
    "FileDeleted",
    "FileObject",
    "FileValidationReport",
    "ValidationLineError",
    "ValidationWarning",
    "TERMINAL_STATUSES",
    "FineTuningJob",
    "FineTuningJobCheckpoint",
    "FineTuningJobError",
    "FineTuningJobEvent",
    "Hyperparameters",
    "JobStatus",
    "Method",
    "MethodSection",
    "Model",
    "ModelDeleted",
    "WebhookDeliveryAttempt",
    "WebhookEndpoint",
    "WebhookEndpointDeleted",
    "WebhookEndpointWithSecret",
    "WebhookEvent",
    "WebhookTestResult",
]
