"""The operator's console: a small server-rendered web app (Starlette, Jinja2, no JavaScript),
served by `skysync console`. Where things are:

* ``app.py``: ``create_app(settings)``, the routes, the error pages.
* ``auth.py``: HTTP Basic users and their roles (viewer, operator), CSRF tokens, the
  security headers; every request passes through it.
* ``pages.py``: the pages (GET), thin over the views of ``skysync/reporting/``.
* ``posts.py``: the actions (POST), each confirmed first; ``actions.py`` runs them with the
  store and relay functions the command line uses and records them in the run log.
* ``forms.py``: a request's parameters parsed and checked; ``context.py``: what every page
  shares (rendering, template filters); ``chart.py``: the overview's SVG chart.
* ``templates/``, ``static/``: the HTML and the one stylesheet, shipped inside the package.
"""
