"""What each tempfast kernel moves, for the static cost model (:mod:`bench.static.model`).

Per kernel (keyed by its name in ``kernels/``): its passes over the ``N x C`` tensors, each a
``(pointer argument, kind[, condition])``: ``read`` / ``write`` once, ``reread`` (a later loop of
the same program reads it again) or ``reread_launch`` (an earlier launch read it), enabled by
the condition (terms joined by ``&``: ``FLAG`` a true constexpr, ``!FLAG``, ``NAME==v`` /
``NAME!=v`` an integer constexpr, a run-time flag such as ``teacher_grad`` from the launch's
scalars, ``moves``: the launch moves data at all); and ``loops``, how its SASS loops run
(``none``: loop-free; ``items``: the persistent work-item loop; ``tiles``: the apply's
grid-stride loop; ``small``: one program; ``combine``: the distillation's combine of partials;
``slice_tiles``: a loop over the ``BLOCK_C`` tiles of the program's slice of ``slice_len``
columns).

The slices kernels' repair launch (``PHASE == 2`` with the run-time flag ``repair``, after
every cooperative ``PHASE == 0`` launch) finishes only the work items whose bounded wait gave
up: none when the programs of a row are co-resident, so it is modelled as moving nothing and
running no work item (:func:`bench.static.model.give_up_cost` prices a give-up).

A launch of a kernel that is in no table fails loudly: whoever adds or renames a kernel adds
its entry here.
"""

from __future__ import annotations

CROSS_ENTROPY = {  # kernels/cross_entropy.py
    "ce_rows_kernel": {
        "passes": (("x_ptr", "read"), ("q_ptr", "read", "PROB"),
                   ("g_ptr", "write", "COMPUTE_GRAD")),
        "loops": "none",
    },
    "ce_slices_kernel": {
        "passes": (("x_ptr", "read", "PHASE!=2"), ("q_ptr", "read", "PROB&PHASE!=2"),
                   ("x_ptr", "reread_launch", "PHASE==2&COMPUTE_GRAD&!repair"),
                   ("q_ptr", "reread_launch", "PHASE==2&PROB&COMPUTE_GRAD&!repair"),
                   ("g_ptr", "write", "COMPUTE_GRAD&PHASE!=1&!repair")),
        "loops": "items",
    },
    "ce_prep_kernel": {"passes": (), "loops": "small"},
}

SOFTMAX = {  # kernels/softmax.py
    "softmax_rows_kernel": {"passes": (("x_ptr", "read"), ("y_ptr", "write")), "loops": "none"},
    "softmax_slices_kernel": {
        "passes": (("x_ptr", "read", "PHASE!=2"), ("x_ptr", "reread_launch", "PHASE==2&!repair"),
                   ("y_ptr", "write", "PHASE!=1&!repair")),
        "loops": "items"},
    "softmax_bwd_rows_kernel": {
        "passes": (("y_ptr", "read"), ("dy_ptr", "read"), ("x_ptr", "read", "COMPUTE_DT"),
                   ("dx_ptr", "write")),
        "loops": "none"},
    "softmax_bwd_slices_kernel": {
        "passes": (("y_ptr", "read", "PHASE!=2"), ("dy_ptr", "read", "PHASE!=2"),
                   ("y_ptr", "reread_launch", "PHASE==2&!repair"),
                   ("dy_ptr", "reread_launch", "PHASE==2&!repair"),
                   ("x_ptr", "read", "COMPUTE_DT&PHASE!=1&!repair"),
                   ("dx_ptr", "write", "PHASE!=1&!repair")),
        "loops": "items"},
}

RESCALE = {  # kernels/rescale.py
    "grad_apply_kernel": {
        "passes": (("buf_ptr", "read", "moves"), ("buf_ptr", "write", "moves")),
        "loops": "tiles",
    },
}

DISTILLATION = {  # kernels/distillation.py; ``teacher_grad`` is a run-time flag
    "kd_rows_kernel": {
        "passes": (("s_ptr", "read"), ("t_ptr", "read"), ("gs_ptr", "write"),
                   ("gt_ptr", "write", "EXTRAS&teacher_grad")),
        "loops": "none",
    },
    "kd_slices_kernel": {
        "passes": (("s_ptr", "read", "PHASE==1"), ("t_ptr", "read", "PHASE==1"),
                   ("s_ptr", "reread_launch", "PHASE==2"),
                   ("t_ptr", "reread_launch", "PHASE==2"),
                   ("gs_ptr", "write", "PHASE==2"),
                   ("gt_ptr", "write", "PHASE==2&EXTRAS&teacher_grad")),
        "loops": "none",
    },
    "kd_combine_kernel": {"passes": (), "loops": "combine"},
    # the one-read launch (PHASE 0) and its repair launch (PHASE 2, repair set: nothing moves
    # when no wait gave up), as the cross-entropy's
    "kd_coop_slices_kernel": {
        "passes": (("s_ptr", "read", "PHASE!=2"), ("t_ptr", "read", "PHASE!=2"),
                   ("gs_ptr", "write", "PHASE!=1&!repair"),
                   ("gt_ptr", "write", "PHASE!=1&EXTRAS&teacher_grad&!repair")),
        "loops": "items",
    },
}

TOKEN_LOGPROBS = {  # kernels/token_logprobs.py: a loop over the tiles of each program's slice
    "token_stats_kernel": {"passes": (("x_ptr", "read"),), "loops": "slice_tiles"},
    "token_finish_kernel": {"passes": (), "loops": "none"},
    "token_grad_kernel": {"passes": (("x_ptr", "read"), ("gx_ptr", "write")),
                          "loops": "slice_tiles"},
}

TRAFFIC = {**CROSS_ENTROPY, **SOFTMAX, **RESCALE, **DISTILLATION, **TOKEN_LOGPROBS}
