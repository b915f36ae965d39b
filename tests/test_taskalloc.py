from hypothesis import given
from hypothesis import strategies as st

from simpletvm.taskalloc import GradientAllocator, TaskState


def make(n, cap=100):
    return [TaskState(i, f"t{i}", 1.0, cap) for i in range(n)]


def test_round_robin_first():
    tasks = make(3)
    alloc = GradientAllocator(tasks)
    order = []
    for _ in range(3):
        task = alloc.next_task()
        order.append(task.index)
        task.rounds += 1
        task.best_history.append(1e-3)
    assert order == [0, 1, 2]


def test_gradient_prefers_heavy_slow_task():
    tasks = make(2)
    tasks[0].weight, tasks[1].weight = 1.0, 4.0
    for t in tasks:
        t.rounds = 1
        t.best_history = [2e-3]
    assert GradientAllocator(tasks).next_task().index == 1


def test_finished_tasks_are_skipped():
    tasks = make(2, cap=4)
    tasks[0].trials_done = 4
    tasks[1].terminated = True
    assert GradientAllocator(tasks).next_task() is None


@given(
    st.lists(
        st.tuples(st.floats(0.1, 10), st.lists(st.floats(1e-6, 1.0), min_size=1, max_size=6)),
        min_size=1,
        max_size=6,
    )
)
def test_always_picks_an_active_task(specs):
    tasks = []
    for i, (weight, hist) in enumerate(specs):
        t = TaskState(i, f"t{i}", weight, 100, rounds=len(hist))
        t.best_history = sorted(hist, reverse=True)
        tasks.append(t)
    chosen = GradientAllocator(tasks).next_task()
    assert chosen is not None and chosen.active
