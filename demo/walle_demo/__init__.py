"""The end-to-end demo and the simulators that feed it (not part of the engine or the agent).

* ``demo.py``: ``walle demo`` — a registry in a child process, a simulated fleet, a purchase-intent
  task trained, signed, rolled out in stages and checked; ``--quick`` runs a tiny MLP on every
  backend. Its :class:`~walle_demo.demo.Stack` (registry process, publisher, keys) is what the
  end-to-end tests stand on.
* ``scenario.py`` and ``intent_task.py``: the purchase-intent task (training data, model, feature
  script, trigger); ``report.py``: the HTML report.
* ``behaviour.py``: an e-commerce shopper simulator (device profiles, sessions of page views,
  clicks, exposures, scrolls); ``simulator.py``: :class:`~walle_demo.simulator.Fleet`, many real
  :class:`~walle_device.DeviceAgent` instances in one process fed by those shoppers.
"""
