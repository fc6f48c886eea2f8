"""What docker-compose.prod.yml does with mongosh, for the secantusd-rs
stand-in of the mongo image (which has no mongosh):

  mongo-users.py root
      on the server's first start (mongo-entrypoint.sh): the root user
      MONGO_INITDB_ROOT_USERNAME/_PASSWORD, created through the localhost
      exception; once any user exists the exception is closed and the
      server refuses, which means the user was made on an earlier start.
  mongo-users.py app HOST REGISTRY
      as the mongo-init service: logged in as MONGO_ROOT_USER, creates
      MONGO_APP_USER with readWrite on each service's database (the
      database column of REGISTRY, services/registry.txt),
      or sets its password and roles again. The replica set needs no
      initiating: the stand-in is one member that announces its own set.
"""

import os
import sys

import pymongo
from pymongo.errors import OperationFailure

UNAUTHORIZED = 13


def client(host, **auth):
    return pymongo.MongoClient(
        host, 27017, directConnection=True, serverSelectionTimeoutMS=120_000, **auth
    )


def root():
    admin = client("127.0.0.1").admin
    try:
        admin.command(
            "createUser",
            os.environ["MONGO_INITDB_ROOT_USERNAME"],
            pwd=os.environ["MONGO_INITDB_ROOT_PASSWORD"],
            roles=["root"],
        )
        print("root user: created")
    except OperationFailure as e:
        if e.code != UNAUTHORIZED:
            raise
        print("root user: made on an earlier start")


def app(host, registry):
    with open(registry) as lines:
        names = [l.split("#")[0].split() for l in lines]
    roles = [{"role": "readWrite", "db": n[2]} for n in names if n]
    admin = client(
        host,
        username=os.environ["MONGO_ROOT_USER"],
        password=os.environ["MONGO_ROOT_PASSWORD"],
        authSource="admin",
    ).admin
    user, pwd = os.environ["MONGO_APP_USER"], os.environ["MONGO_APP_PASSWORD"]
    if admin.command("usersInfo", user)["users"]:
        admin.command("updateUser", user, pwd=pwd, roles=roles)
        print(f"user {user}: password and roles set")
    else:
        admin.command("createUser", user, pwd=pwd, roles=roles)
        print(f"user {user}: created")


if __name__ == "__main__":
    {"root": root, "app": app}[sys.argv[1]](*sys.argv[2:])
