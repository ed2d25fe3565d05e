"""The review console: analysts' queue of cases from the platform's decisions, their verdicts
back onto ``fraud-labels``, and the live picture from the platform's Prometheus metrics.

Modules: ``cases`` (a case's state machine), ``desk`` (transitions made durable, verdict to
label exactly once), ``journal`` (the Kafka side), ``intake`` (decisions that open cases),
``history`` (the card in the online store), ``live`` (Prometheus queries), ``auth`` (sign-in,
CSRF and one-time form tokens), ``web`` (the pages), ``cli`` (``fraud console ...``)."""
