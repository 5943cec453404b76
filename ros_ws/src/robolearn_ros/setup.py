from glob import glob

from setuptools import setup

package_name = "robolearn_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=[package_name],
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.xml")),
        ("share/" + package_name + "/config", glob("config/*.yaml")),
    ],
    # robolearn itself (robolearn.deploy, robolearn.data) comes from `pip install -e .` of this repository
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="robolearn",
    maintainer_email="robolearn@example.com",
    description="ROS 2 nodes of robolearn: policy, simulated robot, episode recorder, relay, benchmark driver",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "policy_node = robolearn_ros.policy_node:main",
            "sim_robot_node = robolearn_ros.sim_robot_node:main",
            "recorder_node = robolearn_ros.recorder_node:main",
            "relay_node = robolearn_ros.relay_node:main",
            "bench_driver_node = robolearn_ros.bench_driver_node:main",
        ],
    },
)
