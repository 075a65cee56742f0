from .checkpoints import AsyncCheckpoints, Checkpoints
from .fine_tuning import AsyncFineTuning, FineTuning
from .jobs import AsyncJobFollower, AsyncJobs, JobFollower, Jobs

__all__ = [
    "AsyncCheckpoints",
    "Checkpoints",
    "AsyncFineTuning",
    "FineTuning",
    "AsyncJobFollower",
    "AsyncJobs",
    "JobFollower",
    "Jobs",
]
