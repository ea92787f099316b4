"""The project as comms write it: the config, the entries, the regions, the subscriber
lists, the languages, who an entry is for, and the secrets that links are made from.

Holds: ``config``, ``yamlfile``, ``fields``, ``entries``, ``regions``, ``subscribers``,
``selection``, ``locales``, ``language``, ``tokens``.
May import: ``domain`` and ``errors`` only: it reads files and knows no storage, no
rendering, no sending.
Imported by: everything else.
"""
