"""kopf handlers (thin): each calls a reconciler in `mailfleet_operator.reconcile`.

Importing a handler module registers its handlers in kopf's default registry;
`HANDLER_MODULES` lists them so `running.run_operator` loads every controller. Add a new
controller's module here.
"""

HANDLER_MODULES: tuple[str, ...] = (
    "mailfleet_operator.handlers.lifecycle",
    "mailfleet_operator.handlers.domainauth",
    "mailfleet_operator.handlers.sendingpool",
    "mailfleet_operator.handlers.ipwarmup",
)
