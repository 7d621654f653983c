"""Who may connect and what they may do, for every front door.

users.py      the users file: users, their hashed secrets and limits
users_cli.py  `broker users`: add, list, remove, passwd
permissions.py topic patterns and allow/deny rules
auth.py       who a connection is (certificate, password, token, anonymous)
tls.py        TLS contexts: Mozilla's intermediate suites, client certificates
"""
