"""Helpers of the ROS 2 tests (importable: pytest puts tests/ros on sys.path): node processes started as the
launcher starts them, an rclpy client in the test process, waiting for a condition."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robolearn.deploy import launch

ROS_PKG = Path(__file__).resolve().parents[2] / "ros_ws" / "src" / "robolearn_ros"


def ros_env(domain: int) -> dict[str, str]:
    """Environment of a test's nodes: its ROS domain, loopback discovery, headless MuJoCo."""
    return {"ROS_DOMAIN_ID": str(domain), "ROS_LOCALHOST_ONLY": "1", "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
            "MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa",
            # three node processes on two cores: torch's intra-op threads would only contend
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class NodeProcess(launch.NodeProcess):
    """A node process (robolearn.deploy.launch.NodeProcess) in this environment plus `env`, whose `wait`
    fails the test with the node's log when it does not exit in time."""

    def __init__(self, exe: str, name: str, params: dict[str, Any], env: dict[str, str], log_dir: Path):
        super().__init__(exe, name, params, {**os.environ, **env}, log_dir)

    def wait(self, timeout: float) -> int:
        try:
            return super().wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout} s; its log:\n{self.log()[-3000:]}") \
                from None


class RosClient:
    """An rclpy node in the test process, on its own context and domain, spun in a background thread."""

    def __init__(self, domain: int):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("test_client", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.lock = threading.Lock()
        self.messages: dict[str, list] = {}
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # the context shut down under us
                break

    def subscribe(self, msg_type, topic: str, qos=None) -> list:
        """Collect every message on `topic` into the returned list (with the arrival time: (t, msg))."""
        from robolearn_ros.common import reliable_qos

        box: list = []
        self.messages[topic] = box

        def on_msg(msg):
            with self.lock:
                box.append((time.monotonic(), msg))

        self.node.create_subscription(msg_type, topic, on_msg, qos or reliable_qos(100))
        return box

    def publisher(self, msg_type, topic: str):
        from robolearn_ros.common import reliable_qos

        return self.node.create_publisher(msg_type, topic, reliable_qos())

    def call(self, srv_type, name: str, request=None, timeout: float = 30.0):
        client = self.node.create_client(srv_type, name)
        if not client.wait_for_service(timeout_sec=timeout):
            raise AssertionError(f"service {name} did not appear within {timeout} s")
        future = client.call_async(request or srv_type.Request())
        deadline = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() > deadline:
                raise AssertionError(f"service {name} did not answer within {timeout} s")
            time.sleep(0.01)
        return future.result()

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.thread.join(timeout=5)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, logs: Callable[[], str] = lambda: "") -> Any:
    """The first truthy predicate(), polled for `timeout` s (else an AssertionError with the logs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs()}")
