from .alpha import Alpha, AsyncAlpha, AsyncGraders, Graders
from .checkpoints import AsyncCheckpoints, Checkpoints
from .exports import AsyncExports, ExportFailedError, Exports
from .fine_tuning import AsyncFineTuning, FineTuning
from .jobs import AsyncJobFollower, AsyncJobs, JobFollower, Jobs

__all__ = [
    "Alpha",
    "AsyncAlpha",
    "AsyncGraders",
    "Graders",
    "AsyncCheckpoints",
    "Checkpoints",
    "AsyncExports",
    "ExportFailedError",
    "Exports",
    "AsyncFineTuning",
    "FineTuning",
    "AsyncJobFollower",
    "AsyncJobs",
    "JobFollower",
    "Jobs",
]
