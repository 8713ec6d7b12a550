"""`python distributed_train.py PROCESS_ID NUM_PROCESSES PORT train ...`: one process of a
local multi-process run (gloo collectives on CPU), then `clipjax` with the remaining args."""

import sys

import jax

if __name__ == "__main__":
    process_id, num_processes, port = (int(a) for a in sys.argv[1:4])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes, process_id)
    from clipjax.cli import main

    sys.exit(main(sys.argv[4:]))
