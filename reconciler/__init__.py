"""cvmkeys: plan and apply the SSH-key bindings of Tencent Cloud CVM instances from Git.

The package is layered so that data flows one way (see ``docs/architecture.md``):

* ``desired/``  loads and validates the desired-state YAML files (I/O);
* ``cloud/``    the CVM API 2.0 client: signing, paging, retries, observing (I/O);
* ``core/``     pure functions: diff, safety, batching, the plan document;
* ``execute/``  carries out a plan against the cloud (I/O);
* ``render/``   pure renderers of plans and results (text, Markdown, JSON);
* ``emulator/`` a wire-compatible emulator of the CVM API, for demos and tests;
* ``cli.py``    the only module that prints, prompts or exits.
"""

__version__ = "0.1.0"
