import logging

# A library logs to no handler of its own: see registry/logs.py for where a server's lines go.
logging.getLogger(__name__).addHandler(logging.NullHandler())
