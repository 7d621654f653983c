"""The running broker: what `twistd broker` composes and starts.

tap.py        the `twistd broker` options, checked, and makeService
config.py     the TOML configuration file under the options
service.py    BrokerService: the store, the core, the doors; signals and drain
listeners.py  --port and --monitor strings as Twisted endpoints
log_output.py the log's formats, levels and file
"""
