"""Webhooks (docs/webhooks.md): events, their durable outbox, signed delivery with retries.

* :mod:`.events`: event names, payloads, the signature (pure);
* :mod:`.schema`: the tables (revision 0007);
* :mod:`.outbox`: the event written in the transaction of its change;
* :mod:`.store`: webhooks, claims with a lease, attempts, the views;
* :mod:`.delivery`: the background task that POSTs, retries with backoff, gives up.
"""
