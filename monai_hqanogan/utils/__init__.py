from __future__ import annotations

from .checkpoint import (
    CheckpointError,
    atomic_output,
    get_rng_states,
    list_checkpoints,
    load_checkpoint,
    model_fingerprint,
    save_checkpoint_atomic,
    set_rng_states,
    write_text_atomic,
)
from .progress import progress_bar, progress_disable, progress_shown
from .run_dir_lock import (
    LOCK_NAME,
    RunLockedError,
    acquire_run_lock,
    check_run_lock,
    read_run_lock,
    release_run_lock,
    run_lock,
)
from .strict_json import finite_or_none, strict_json
from .validation import (
    MAX_RESOLUTION,
    MIN_RESOLUTION,
    as_bool,
    check_image_batch,
    check_positive_int,
    check_positive_number,
    check_resolution,
    check_time_limit,
)
