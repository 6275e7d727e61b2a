"""Pagination of big ordered querysets: the page's ids first, then its rows.

``OFFSET n`` makes the database produce and drop n rows. Produced with every
column and join (a run's JSON, its exposure), that is slow far into 100,000
runs; produced as ids only, the database reads them from an index (run:
``queued_at, id, exposure``; exposure: ``uploaded_by, ..., id``) without
touching the tables. The rows of the page are then fetched by primary key.
"""

from __future__ import annotations

from django.core.paginator import Page, Paginator


class IdsFirstPaginator(Paginator):
    """A :class:`~django.core.paginator.Paginator` whose pages cost two queries: ids, then rows.

    ``object_list`` must be an ordered queryset; the page keeps its order.
    """

    def page(self, number) -> Page:
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        top = bottom + self.per_page
        if top + self.orphans >= self.count:
            top = self.count
        ids = list(self.object_list.values_list("pk", flat=True)[bottom:top])
        rows = {row.pk: row for row in self.object_list.order_by().filter(pk__in=ids)}
        return self._get_page([rows[i] for i in ids if i in rows], number, self)
