"""The sending providers whose webhooks ``serve`` answers, one module each (``ses``,
``postmark``, ``mailgun``, ``sendgrid``): how each signs what it posts, checked, and what
its events say, read as ``ProviderReport``s; what their checks share in ``common``.
The routes that call them are ``feedback.webhooks``.
"""
