"""What devices tells the apps above it about measurement requests, without importing them.

A job waits for its requests; devices does not know jobs. It sends ``request_ended`` and
adaptation's receiver (``adaptation.receivers``) turns it into the job's events and wakes the job.
"""
from django.dispatch import Signal

#: A measurement request ended: measured (``status`` "done") or failed. Sent once per request,
#: inside the transaction that ended it, with sender ``MeasurementRequest`` and the keywords
#: ``request`` (the row as the caller held it), ``status``, ``table_size`` (entries in the
#: device's table afterwards; None for a failed request) and ``host_message`` (a line for the
#: log of the request's job about taking this host; "" when there is none).
request_ended = Signal()
