"""Prints every account's balance in a Beancount file as JSON: {account: {currency: "amount"}}.

Used by tests/common/export_check.rs to compare Beancount's own arithmetic with carebill's ledger.
Exits 1 (printing the errors) if Beancount does not accept the file.
"""
import json
import sys

from beancount import loader
from beancount.core import realization

entries, errors, _options = loader.load_file(sys.argv[1])
if errors:
    for error in errors:
        print(error, file=sys.stderr)
    sys.exit(1)
balances = {}
for account in realization.iter_children(realization.realize(entries)):
    for position in account.balance:
        units = position.units
        balances.setdefault(account.account, {})[units.currency] = str(units.number)
print(json.dumps(balances))
