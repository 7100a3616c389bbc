from regions.current import current_region


def site(request):
    region = current_region()
    return {"region": region}
