# Runs inside MicroPython: heap held by the shared core with a workflow loaded. One JSON line.
import gc
import json
import sys

with open("/bench/config.json") as f:
    CFG = json.load(f)
sys.path.insert(0, CFG["path"])
blob = bytes.fromhex(CFG["workflow_blob"])

gc.collect()
before = gc.mem_alloc()
from shared import executor, filters, hmac256, program, protocol  # noqa: E402

gc.collect()
modules = gc.mem_alloc() - before


class Host:
    def output(self, i, v):
        pass

    def publish(self, i, v):
        pass

    def set_period(self, i, ms):
        pass


prog = program.Program(blob)
ex = executor.Executor(prog, Host(), lambda: 0)
ex.start()
gc.collect()
total = gc.mem_alloc() - before
print(
    json.dumps(
        {
            "modules": modules,
            "workflow": total - modules,
            "total": total,
            "loaded": [m.__name__ for m in (executor, filters, hmac256, program, protocol)],
        }
    )
)
