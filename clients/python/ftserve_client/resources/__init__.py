from .chat import AsyncChat, AsyncCompletions, Chat, Completions
from .estimates import AsyncEstimates, Estimates
from .files import AsyncFiles, Files
from .fine_tuning import AsyncFineTuning, AsyncJobs, FineTuning, Jobs
from .models import AsyncModels, Models
from .webhooks import AsyncWebhooks, Webhooks

__all__ = [
    "AsyncChat",
    "AsyncCompletions",
    "Chat",
    "Completions",
    "AsyncEstimates",
    "Estimates",
    "AsyncFiles",
    "Files",
    "AsyncFineTuning",
    "AsyncJobs",
    "FineTuning",
    "Jobs",
    "AsyncModels",
    "Models",
    "AsyncWebhooks",
    "Webhooks",
]
