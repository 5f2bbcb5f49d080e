"""cvmkeys: plan and apply the SSH-key bindings of Tencent Cloud CVM instances from Git.

The package is layered so that data flows one way (see ``docs/architecture.md``):

* ``desired/``      loads and validates the desired-state YAML files (I/O);
* ``cloud/``        the one client interface (``base.CloudClient``) and the API clients
                    behind it: signing, paging, retries, observing (I/O);
* ``core/``         pure functions: diff, safety, batching, the plan document;
* ``execute/``      carries out a plan against the cloud (I/O);
* ``render/``       pure renderers of plans and results (text, Markdown, JSON);
* ``emulator/``     a wire-compatible emulator of the CVM API, for demos and tests;
* ``operations.py`` what each command does: typed requests in, data out;
* ``cli/``          the only package that prints, prompts or exits (commands and views).

The layering is declared as import-linter contracts in ``pyproject.toml``.
"""

__version__ = "0.1.0"
