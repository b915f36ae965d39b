"""simpletvm: tune, build, benchmark and export ONNX models with Apache TVM."""

from .threads import configure_runtime_threads

# before any kernel starts TVM's thread pool: one thread per physical core (threads.py)
configure_runtime_threads()
