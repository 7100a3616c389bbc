"""Many rows of one model in few INSERT ... RETURNING statements, without `bulk_create`'s per-field work.

`bulk_create` spends ~80 µs a row on model instances and generic per-field
preparation (a fifth of a worker's archiving, a third of the committer's
Python time): here each value is prepared with its field's own database
preparation (values that repeat, such as recipients, peers and a batch's
timestamps, once; a plain str, int or bool for a text, integer or boolean
column as it is, which is what that preparation returns for them), and one
statement goes per chunk of rows, its SQL made once per number of rows.
Every concrete field is written, from the row or its default, so a field
added to a model is covered.  The committer (`ingest.record`) and the
worker's new Messages (`archive.actions`) write their rows this way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, cast

from django.db import NotSupportedError, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model

# Rows per INSERT statement (and the backend's parameter limit): the SQL kept per row count stays small.
MAX_ROWS_PER_STATEMENT = 100

# A row as column values by attribute name (`tenant_id`, not `tenant`).
Row = dict[str, Any]

# Columns whose database preparation returns a value of this exact type unchanged.
_PLAIN_TYPES: dict[str, type] = {
    "CharField": str,
    "TextField": str,
    "BigIntegerField": int,
    "IntegerField": int,
    "PositiveIntegerField": int,
    "BooleanField": bool,
    "ForeignKey": int,  # the key of a model whose primary key is an integer
}

_PER_ROW = object()


class InsertPlan:
    """What inserting rows of one model works out once per database connection:
    the columns, how to prepare each, the defaults already prepared, and the
    SQL for each number of rows a statement carries."""

    def __init__(self, connection: BaseDatabaseWrapper, model: type[Model], returning: tuple[str, ...] = ()) -> None:
        if not connection.features.can_return_rows_from_bulk_insert:
            raise NotSupportedError("inserting rows needs INSERT ... RETURNING (SQLite 3.35+ or PostgreSQL)")
        self.connection = connection
        meta = model._meta
        self.columns = [column for column in meta.concrete_fields if not column.primary_key]
        # (attname, column, plain type or None, the prepared default or _PER_ROW)
        self.steps: list[tuple[str, Field[Any, Any], type | None, object]] = [
            (column.attname, column, _PLAIN_TYPES.get(column.get_internal_type()), self._default(column))
            for column in self.columns
        ]
        quote = connection.ops.quote_name
        self.table = quote(meta.db_table)
        # A concrete field always has a column (django-stubs type it `str | None`).
        self.names = ", ".join(quote(cast(str, column.column)) for column in self.columns)
        by_name = {column.name: column for column in meta.concrete_fields}
        returned = [cast(str, meta.pk.column), *(cast(str, by_name[name].column) for name in returning)]
        self.returning = ", ".join(quote(name) for name in returned)
        # The driver's own placeholder: statements go past Django's cursor wrapper.
        paramstyle = connection.Database.paramstyle  # type: ignore[attr-defined]  # the backend's driver module: not in django-stubs
        placeholder = "?" if paramstyle == "qmark" else "%s"
        self.row_sql = "(" + ", ".join([placeholder] * len(self.columns)) + ")"
        # The most rows one statement carries: the backend's parameter limit
        # (asked with a huge row count, which backends without one return),
        # and at most MAX_ROWS_PER_STATEMENT.
        self.max_rows = max(
            1, min(MAX_ROWS_PER_STATEMENT, connection.ops.bulk_batch_size(self.columns, range(1 << 20)))
        )
        self._sql: dict[int, str] = {}
        # (column, type, value) -> the value prepared by its field.
        self._prepared: dict[tuple[str, type, object], object] = {}

    def _default(self, column: Field[Any, Any]) -> object:
        """A constant default, prepared once; a callable one (a new list, now()) is made per row."""
        if column.has_default() and callable(column.default):
            return _PER_ROW
        return column.get_db_prep_save(column.get_default(), self.connection)

    def sql(self, rows: int) -> str:
        """The INSERT for this many rows, for the driver's cursor."""
        if rows not in self._sql:
            # Names come from the model, quoted by the backend; every value is a parameter.
            values = ", ".join([self.row_sql] * rows)
            self._sql[rows] = f"INSERT INTO {self.table} ({self.names}) VALUES {values} RETURNING {self.returning}"  # noqa: S608
        return self._sql[rows]

    def _prepare(self, attname: str, column: Field[Any, Any], value: object) -> object:
        """column.get_db_prep_save(value), remembered for values that repeat."""
        try:
            key = (attname, type(value), tuple(value) if type(value) is list else value)
            hash(key)
        except TypeError:  # a value that cannot be a key: prepared every time
            return column.get_db_prep_save(value, self.connection)
        if key not in self._prepared:
            if len(self._prepared) >= 4096:  # timestamps never repeat across batches
                self._prepared.clear()
            self._prepared[key] = column.get_db_prep_save(value, self.connection)
        return self._prepared[key]

    def params(self, rows: list[Row]) -> list[tuple[object, ...]]:
        prepared: list[tuple[object, ...]] = []
        for values in rows:
            params: list[object] = []
            for attname, column, kind, default in self.steps:
                if attname not in values:
                    if default is not _PER_ROW:
                        params.append(default)
                        continue
                    value = column.get_default()
                else:
                    value = values[attname]
                if kind is not None and (value is None or type(value) is kind):
                    params.append(value)
                else:
                    params.append(self._prepare(attname, column, value))
            prepared.append(tuple(params))
        return prepared

    def insert(self, cursor: Any, rows: list[Row]) -> list[tuple[Any, ...]]:  # the DB-API driver's cursor: untyped
        """Insert the rows with the driver's `cursor`; the primary key and the
        `returning` columns of each, in no particular order (SQLite promises none)."""
        prepared = self.params(rows)
        returned: list[tuple[Any, ...]] = []
        for start in range(0, len(prepared), self.max_rows):
            chunk = prepared[start : start + self.max_rows]
            cursor.execute(self.sql(len(chunk)), [param for params in chunk for param in params])
            returned.extend(tuple(row) for row in cursor.fetchall())
        return returned


_plans: dict[tuple[int, type[Model], tuple[str, ...]], InsertPlan] = {}


def insert_plan(connection: BaseDatabaseWrapper, model: type[Model], returning: tuple[str, ...] = ()) -> InsertPlan:
    """The connection's plan for the model's rows, made on first use."""
    key = (id(connection), model, returning)
    plan = _plans.get(key)
    if plan is None or plan.connection is not connection:
        plan = _plans[key] = InsertPlan(connection, model, returning)
    return plan


def insert_rows(
    connection: BaseDatabaseWrapper, model: type[Model], rows: list[Row], returning: tuple[str, ...] = ()
) -> list[tuple[Any, ...]]:
    """Insert rows of `model` in a savepoint (its own transaction outside one);
    each row's primary key and `returning` columns, in no particular order.

    The statements go to the driver's own cursor, inside Django's error
    wrapper (so a failed connection is noticed and replaced); a refused row
    rolls back the savepoint and leaves the caller's transaction usable."""
    plan = insert_plan(connection, model, returning)
    with transaction.atomic(using=connection.alias), driver_cursor(connection) as cursor:
        return plan.insert(cursor, rows)


@contextlib.contextmanager
def driver_cursor(connection: BaseDatabaseWrapper) -> Iterator[Any]:
    """A cursor of the database driver's connection, its errors wrapped as Django's."""
    connection.ensure_connection()
    with connection.wrap_database_errors:
        cursor = connection.connection.cursor()
        try:
            yield cursor
        finally:
            cursor.close()
