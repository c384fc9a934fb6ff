import re

from setuptools import find_packages, setup


def _version() -> str:
    """The one version source is qasino/__init__.py."""
    text = open("qasino/__init__.py", encoding="utf-8").read()
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


setup(
    name="qasino",
    version=_version(),
    description="Qasino: the current state of your fleet, in SQL",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["qasino", "qasino.*"]),
    include_package_data=True,
    package_data={"qasino.web": ["templates/*", "static/*"]},
    install_requires=[
        "twisted[tls]>=23.10",
        "txzmq>=1.0",
        "pyzmq>=25",
        "apsw>=3.44",
        "pyyaml>=6",
        "jinja2>=3.1",
        "requests>=2.28",
        "libpass>=1.9",
        "bcrypt>=4",
        "orjson>=3.9",
    ],
    extras_require={
        # NATS JetStream mode (--nats): only servers and clients that use it
        # need the client library; the tests run it, so "test" includes it.
        "nats": ["nats-py>=2.6"],
        "test": [
            "nats-py>=2.6",
            "pytest>=8",
            "hypothesis>=6",
            "ruff>=0.6",
            "mypy>=1.10",
            "types-PyYAML",
            "types-requests",
            "pexpect>=4.8",
            "playwright>=1.40",
            "cryptography>=41",
        ],
    },
    entry_points={
        "console_scripts": [
            "qasino_server=qasino.cli:server_main",
            "qasinosql=qasino.cli:sqlclient_main",
            "qasino_publish=qasino.cli:publish_main",
            "qasino_csvpublisher=qasino.cli:csvpublisher_main",
            # The original pip package's name for the agent.
            "qasinocsvpub=qasino.cli:csvpublisher_main",
        ],
    },
)
