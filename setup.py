import re

from setuptools import find_namespace_packages, setup


def _version() -> str:
    """The one version source is qasino/__init__.py."""
    text = open("qasino/__init__.py", encoding="utf-8").read()
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


setup(
    name="qasino",
    version=_version(),
    # Name, description, licence, classifiers, scripts: pyproject.toml.
    # The web UI's templates and static files are data packages of their own.
    packages=find_namespace_packages(include=["qasino", "qasino.*"]),
    package_data={
        "qasino": ["py.typed"],
        "qasino.web.templates": ["*"],
        "qasino.web.static": ["*"],
    },
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
        "prometheus_client>=0.17",
        "tomli>=1.1; python_version < '3.11'",
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
            "mypy-zope>=1.0",
            "types-PyYAML",
            "types-requests",
            "pexpect>=4.8",
            "playwright>=1.40",
            "cryptography>=41",
        ],
    },
)
