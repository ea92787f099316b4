"""The project as comms write it: the config, the entries, the regions, the subscriber
lists, the languages, who an entry is for, and the secrets that links are made from.

Holds: ``config`` (its sections about sending in ``sending``, about bounces and webhooks
in ``feedback_settings``, the site's in ``publishing``; the secrets read from the
environment and the token keys made from them in ``secrets``), ``yamlfile``, ``fields``,
``entries``, ``regions``, ``subscribers`` (reading the lists; a row's rules in
``subscriber_rows``, CSV in ``subscriber_csv``, YAML in ``subscriber_yaml``),
``selection``, ``locales``, ``language``, ``tokens``; beside them the checks ``check``
runs on what they read: the languages of translations and topic names
(``language_checks``), what the lists say of each audience (``audience_checks``).
May import: ``domain`` and ``errors`` only: it reads files and knows no storage, no
rendering, no sending.
Imported by: everything else.
"""
